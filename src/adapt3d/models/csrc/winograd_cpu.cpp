// Winograd F(6x6, 3x3) tile transforms for adapt3d's CPU inference path (see adapt3d/models/winograd.py).
//
// The pure-PyTorch path in winograd.py gathers the tiles into a padded copy and applies the transforms as small
// matrix products, one memory pass each. These two functions do, for a chunk of tile rows, the gather + input
// transform and the output transform + crop in a single pass, 16 channels at a time (one AVX-512 register, or two
// AVX2 ones; plain loops the compiler vectorises). They take the transform matrices as arguments (winograd.py
// derives them exactly) and skip their zero entries, so the maths is the same as the PyTorch path; only the order
// of the floating-point sums may differ.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace {

constexpr int kN = 8;    // input tile side (6 + 3 - 1)
constexpr int kM = 6;    // output tile side
constexpr int kCB = 16;  // channels per block

// The non-zero entries of each row of a (rows, 8) transform matrix.
struct SparseRows {
  int count[kN];
  int col[kN][kN];
  float val[kN][kN];
  SparseRows(const float* m, int rows) {
    for (int r = 0; r < rows; ++r) {
      count[r] = 0;
      for (int k = 0; k < kN; ++k) {
        if (m[r * kN + k] != 0.f) {
          col[r][count[r]] = k;
          val[r][count[r]] = m[r * kN + k];
          ++count[r];
        }
      }
    }
  }
};

// dst[c] = sum_k val[k] * src[col[k]][c] for 16 channels; src rows are kCB apart.
inline void combine16(const SparseRows& s, int row, const float* src, int64_t src_step, float* dst) {
  alignas(64) float acc[kCB] = {0.f};
  for (int k = 0; k < s.count[row]; ++k) {
    const float f = s.val[row][k];
    const float* p = src + s.col[row][k] * src_step;
    for (int c = 0; c < kCB; ++c) acc[c] += f * p[c];
  }
  for (int c = 0; c < kCB; ++c) dst[c] = acc[c];
}

// v[a * 8 + b] (for tile t) = sum_ij BT[a][i] d[i][j] BT[b][j], d the 8x8 window of x at (6 r - 1, 6 q - 1),
// each channel multiplied by scale[c] first if scale is given.
void input_transform_impl(const float* x, int64_t H, int64_t W, int64_t sH, int64_t sW, int64_t C, int64_t tile_row0,
                          int64_t n_rows, int64_t tiles_w, const SparseRows& bt, const float* scale, float* v,
                          int64_t pos_stride, int64_t tile_stride) {
  const int64_t T = n_rows * tiles_w;
  at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
    alignas(64) float d[kN][kN][kCB];
    alignas(64) float r[kN][kN][kCB];
    alignas(64) float out[kCB];
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t row0 = (tile_row0 + t / tiles_w) * kM - 1;
      const int64_t col0 = (t % tiles_w) * kM - 1;
      for (int64_t c0 = 0; c0 < C; c0 += kCB) {
        const int64_t cb = std::min<int64_t>(kCB, C - c0);
        for (int i = 0; i < kN; ++i) {  // gather the window, zero outside the image (and past C)
          const int64_t y = row0 + i;
          for (int j = 0; j < kN; ++j) {
            const int64_t xx = col0 + j;
            float* dst = d[i][j];
            if (y < 0 || y >= H || xx < 0 || xx >= W) {
              for (int c = 0; c < kCB; ++c) dst[c] = 0.f;
            } else if (cb == kCB && scale == nullptr) {
              const float* src = x + y * sH + xx * sW + c0;
              for (int c = 0; c < kCB; ++c) dst[c] = src[c];
            } else if (cb == kCB) {
              const float* src = x + y * sH + xx * sW + c0;
              for (int c = 0; c < kCB; ++c) dst[c] = src[c] * scale[c0 + c];
            } else {
              const float* src = x + y * sH + xx * sW + c0;
              for (int c = 0; c < kCB; ++c) dst[c] = c < cb ? (scale ? src[c] * scale[c0 + c] : src[c]) : 0.f;
            }
          }
        }
        for (int a = 0; a < kN; ++a)  // along rows: r[a][j] = sum_i BT[a][i] d[i][j]
          for (int j = 0; j < kN; ++j) combine16(bt, a, &d[0][j][0], kN * kCB, r[a][j]);
        for (int a = 0; a < kN; ++a) {  // along columns: v[a][b] = sum_j BT[b][j] r[a][j]
          for (int b = 0; b < kN; ++b) {
            float* dst = v + (a * kN + b) * pos_stride + t * tile_stride + c0;
            if (cb == kCB) {
              combine16(bt, b, &r[a][0][0], kCB, dst);
            } else {
              combine16(bt, b, &r[a][0][0], kCB, out);
              for (int64_t c = 0; c < cb; ++c) dst[c] = out[c];
            }
          }
        }
      }
    }
  });
}

// out[6 r + p][6 q + s] = sum_ab AT[p][a] prod[a * 8 + b] AT[s][b] for tile (r, q), times scale[o] if given;
// rows/columns past H, W dropped.
void output_transform_impl(const float* prod, int64_t pos_stride, int64_t tile_stride, int64_t T, int64_t O,
                           const SparseRows& at, const float* scale, float* out, int64_t H, int64_t W, int64_t sH,
                           int64_t sW, int64_t tile_row0, int64_t tiles_w) {
  at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
    alignas(64) float m[kN][kN][kCB];
    alignas(64) float r[kM][kN][kCB];
    alignas(64) float y[kCB];
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t row0 = (tile_row0 + t / tiles_w) * kM;
      const int64_t col0 = (t % tiles_w) * kM;
      const int rows = static_cast<int>(std::min<int64_t>(kM, H - row0));
      const int cols = static_cast<int>(std::min<int64_t>(kM, W - col0));
      for (int64_t o0 = 0; o0 < O; o0 += kCB) {
        const int64_t ob = std::min<int64_t>(kCB, O - o0);
        for (int a = 0; a < kN; ++a) {
          for (int b = 0; b < kN; ++b) {
            const float* src = prod + (a * kN + b) * pos_stride + t * tile_stride + o0;
            if (ob == kCB) {
              for (int c = 0; c < kCB; ++c) m[a][b][c] = src[c];
            } else {
              for (int c = 0; c < kCB; ++c) m[a][b][c] = c < ob ? src[c] : 0.f;
            }
          }
        }
        for (int p = 0; p < rows; ++p)  // along rows: r[p][b] = sum_a AT[p][a] m[a][b]
          for (int b = 0; b < kN; ++b) combine16(at, p, &m[0][b][0], kN * kCB, r[p][b]);
        for (int p = 0; p < rows; ++p) {  // along columns: y[p][s] = sum_b AT[s][b] r[p][b]
          for (int s = 0; s < cols; ++s) {
            float* dst = out + (row0 + p) * sH + (col0 + s) * sW + o0;
            if (ob == kCB && scale == nullptr) {
              combine16(at, s, &r[p][0][0], kCB, dst);
            } else {
              combine16(at, s, &r[p][0][0], kCB, y);
              if (scale != nullptr) {
                for (int64_t c = 0; c < ob; ++c) dst[c] = y[c] * scale[o0 + c];
              } else {
                for (int64_t c = 0; c < ob; ++c) dst[c] = y[c];
              }
            }
          }
        }
      }
    }
  });
}

const float* scale_ptr(const std::optional<torch::Tensor>& scale, int64_t n, const char* name) {
  if (!scale.has_value()) return nullptr;
  const torch::Tensor& s = *scale;
  TORCH_CHECK(s.dim() == 1 && s.size(0) == n && s.scalar_type() == torch::kFloat32 && s.is_contiguous() &&
              s.device().is_cpu(), name, " must be a contiguous CPU float32 vector of ", n, " channels");
  return s.data_ptr<float>();
}

void check_matrix(const torch::Tensor& m, int64_t rows, const char* name) {
  TORCH_CHECK(m.dim() == 2 && m.size(0) == rows && m.size(1) == kN && m.scalar_type() == torch::kFloat32 &&
              m.is_contiguous() && m.device().is_cpu(), name, " must be a contiguous CPU float32 (", rows,
              ", 8) matrix");
}

// x: (H, W, C) float32 with unit channel stride (one channels-last sample); scale: None or (C,). Returns
// (64, n_rows * tiles_w, C): the transformed tiles of tile rows [tile_row0, tile_row0 + n_rows), stored tile-major
// (strides (C, 64 C, 1)): per tile, 64 x C contiguous values, i.e. NHWC for the grouped 1x1 convolution.
torch::Tensor input_transform(const torch::Tensor& x, int64_t tile_row0, int64_t n_rows, int64_t tiles_w,
                              const torch::Tensor& bt, const std::optional<torch::Tensor>& scale) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && x.stride(2) == 1 && x.device().is_cpu(),
              "x must be a CPU float32 (H, W, C) tensor with unit channel stride");
  check_matrix(bt, kN, "BT");
  TORCH_CHECK(n_rows > 0 && tiles_w > 0 && tile_row0 >= 0 && tiles_w * kM >= x.size(1) &&
              (tile_row0 + n_rows - 1) * kM < x.size(0), "tile range does not match the input");
  const int64_t C = x.size(2), T = n_rows * tiles_w;
  auto v = torch::empty({T, kN * kN, C}, x.options()).permute({1, 0, 2});
  const SparseRows s(bt.data_ptr<float>(), kN);
  input_transform_impl(x.data_ptr<float>(), x.size(0), x.size(1), x.stride(0), x.stride(1), C, tile_row0, n_rows,
                       tiles_w, s, scale_ptr(scale, C, "scale"), v.data_ptr<float>(), v.stride(0), v.stride(1));
  return v;
}

// prod: (64, T, O) with unit channel stride; out: (H, W, O) float32 with unit channel stride, written in place;
// scale: None or (O,).
void output_transform(const torch::Tensor& prod, const torch::Tensor& at, torch::Tensor out, int64_t tile_row0,
                      int64_t tiles_w, const std::optional<torch::Tensor>& scale) {
  TORCH_CHECK(prod.dim() == 3 && prod.size(0) == kN * kN && prod.stride(2) == 1 &&
              prod.scalar_type() == torch::kFloat32 && prod.device().is_cpu(),
              "prod must be a CPU float32 (64, T, O) tensor with unit channel stride");
  check_matrix(at, kM, "AT");
  TORCH_CHECK(out.dim() == 3 && out.scalar_type() == torch::kFloat32 && out.stride(2) == 1 && out.device().is_cpu() &&
              out.size(2) == prod.size(2), "out must be a CPU float32 (H, W, O) tensor with unit channel stride");
  const int64_t T = prod.size(1);
  TORCH_CHECK(tiles_w > 0 && T % tiles_w == 0 && tile_row0 >= 0 && tiles_w * kM >= out.size(1) &&
              (tile_row0 + T / tiles_w - 1) * kM < out.size(0), "tile range does not match the output");
  const SparseRows s(at.data_ptr<float>(), kM);
  output_transform_impl(prod.data_ptr<float>(), prod.stride(0), prod.stride(1), T, prod.size(2), s,
                        scale_ptr(scale, prod.size(2), "scale"), out.data_ptr<float>(), out.size(0), out.size(1),
                        out.stride(0), out.stride(1), tile_row0, tiles_w);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("input_transform", &input_transform, "Winograd F(6x6,3x3): gather + input transform of a chunk of tile rows",
        py::arg("x"), py::arg("tile_row0"), py::arg("n_rows"), py::arg("tiles_w"), py::arg("bt"),
        py::arg("scale") = py::none());
  m.def("output_transform", &output_transform, "Winograd F(6x6,3x3): output transform + crop into channels-last out",
        py::arg("prod"), py::arg("at"), py::arg("out"), py::arg("tile_row0"), py::arg("tiles_w"),
        py::arg("scale") = py::none());
}

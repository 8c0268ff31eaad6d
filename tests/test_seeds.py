"""The two seed schemes are part of the reproducibility contract of run folders and datasets written by earlier
versions: a resumed run must draw what the interrupted one would have. Golden values from the released scheme."""

from adapt3d.utils.seeds import derive_seed, stream_seed


def test_training_seeds_are_the_released_ones():
    assert derive_seed(0, 3, "Gmain", 1) == 2709863178270381772
    assert derive_seed(7, 0, "reals") == 3228032161127509001
    assert derive_seed(7, 0, "reals") != derive_seed(7, 1, "reals") != derive_seed(7, 0, "Dmain")
    assert all(0 <= derive_seed(s, "x") < 2 ** 63 for s in range(50))


def test_dataset_stream_seeds_are_the_released_ones():
    assert (stream_seed(0, 0, 1), stream_seed(5, 2, 1), stream_seed(123, 9, 2)) == (3831201730, 1070606992,
                                                                                   2953901970)
    assert stream_seed(2 ** 32 + 5, 2, 1) == stream_seed(5, 2, 1)  # the job seed is taken mod 2**32
    assert stream_seed(5, 2, 1) != stream_seed(5, 2, 2) != stream_seed(5, 3, 2)

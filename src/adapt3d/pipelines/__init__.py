"""One pipeline per job: render, (later) make-dataset, adapt, synth, eval, invert, distill."""

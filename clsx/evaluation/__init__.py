"""Commands that run a model directory on data and measure it: evaluate, calibrate, bench."""

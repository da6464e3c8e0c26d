"""What good means: parity with the fp32 reference, metrics, calibration (temperature
scaling, thresholds)."""

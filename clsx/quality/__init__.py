"""What good means: parity with the fp32 reference, metrics, calibration (temperature
scaling, thresholds), the re-check's cut.

Light on purpose (no numpy, no pyarrow): ``--help`` reads the default below from here.
"""

# --max-label-changes: the share of labels a re-checked run may change from fp32's that a
# re-check's sample is held to (clsx.quality.recheck).
MAX_LABEL_CHANGES = 1e-4

"""Fine-tuning stability: DPS (dynamic parameter selection) and the baselines its paper compares with: Mixout,
ChildTuning-D, re-initialisation, R3F/R4F and R-Drop (sharing consistency and mixing helpers)."""

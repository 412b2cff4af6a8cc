"""curvenet-dist: distributed probe-and-allocate training for noisy, long-tailed image classification."""

"""Model v2 ("pleura-lite"): a truncated, ImageNet-pretrained EfficientNet-Lite0 backbone,
linear heads for every label the data sets carry, attention pooling over frames, a patient
combiner over zone findings (image only, or with clinic vitals), calibrated in-fold."""

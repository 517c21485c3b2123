"""FCN-32s/16s/8s on VGG16: model, weights, VOC data, training and evaluation (needs torch)."""

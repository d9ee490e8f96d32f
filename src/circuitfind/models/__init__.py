"""Model loading: tracr programs (shipped weights); later, pretrained and self-trained models."""

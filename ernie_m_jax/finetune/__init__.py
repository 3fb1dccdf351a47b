"""Fine-tuning a pretrained encoder for sentence(-pair) classification, and evaluating it per
language: the paper's cross-lingual transfer (train on English, test on every language) and
translate-train-all, inside the framework that pretrained the encoder."""

"""Language-model augmentation: item descriptions, user profiles and synthetic interactions (not built yet)."""

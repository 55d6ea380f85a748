"""Planning: predict size, memory, speed and quality per candidate build; pick the best that fits."""

"""The ground floor: what every room of edgellm shares (ggml's type table, reading a stranger's
file safely, hashing, atomic writes).  Nothing here imports anything of edgellm's above it."""

"""qrag: multi-step Q-value retrieval (Q-RAG) over local files."""

import os

# torch's CPU kernels run on OpenMP threads, and libgomp's default wait policy spins at
# every barrier. On a busy machine (another process on one of the cores) the spinning
# thread keeps the one it waits for off the CPU: on this 2-core machine under load an
# elementwise op over 7M floats took 190 ms instead of 2.4 ms, and 40 training updates
# 286 s instead of 73 s. PASSIVE waits asleep. libgomp reads it once, when torch loads,
# so it is set here, before any module imports torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

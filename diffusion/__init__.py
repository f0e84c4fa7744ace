"""dmops' machine-learning core: diffusion training, sampling, distillation and evaluation."""

import os

# Before torch loads its OpenMP runtime (it reads this once, at start-up): idle OpenMP threads
# sleep rather than spin.  Spinning threads that lose their core to another process (a server
# of the stack, a second run, a test) make every small step wait for them: on a loaded 2-core
# machine a step of the table MLP took 227 ms with two spinning threads, 15 ms with two
# passive ones and 24 ms with one thread; a digits UNet step 852, 181 and 159 ms.  The price
# on an idle machine is smaller: a digits UNet step 122 ms spinning, 139 ms passive; with one
# busy process beside it 435 and 246 ms (benchmarks/train_speed.py --steps 30, GOMP_SPINCOUNT
# 300000 vs 0, 2 cores).  On a dedicated machine, OMP_WAIT_POLICY=ACTIVE wins those 12 %: a
# value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

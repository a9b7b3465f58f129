"""`make bench`: not built yet — the benchmark comes with its own issue; this says so and exits cleanly."""

import sys

print(
    "terminhub bench: the benchmark of the hot paths is not implemented yet (planned: bench/).",
    file=sys.stderr,
)

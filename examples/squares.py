"""Deploy a real job on the embedded scheduler and print its results.

    python examples/squares.py
"""

from dcp_worktimes import compute

job = compute.for_(1, 10, "function(x) { progress(); return x * x }")
job.public = {"name": "squares", "description": "the README's first job"}
job.on("accepted", lambda ev: print(f"job {job.id} accepted"))
results = job.exec()
print("results:", list(results))
print("key(7): ", results.key(7))

"""`python -m dfkd.bench`: the benchmark (dfkd.bench.suite)."""
from dfkd.bench.suite import console

console()

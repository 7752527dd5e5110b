"""The benchmark (`python -m dfkd.bench`): every recipe under the same conditions, read back from the runs' own files,
and throughput at paper scale. It imports no training code to read results."""

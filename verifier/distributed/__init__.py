"""Dataset-scale audits (`popqorn audit`): batches of samples certified on Ray workers, or in this
process when Ray is absent, streamed into a resumable JSON-lines journal.

journal.py: the JSONL file (header + one line per sample), durable per batch, resumable.
worker.py: what one worker does with one batch (no Ray in it; the in-process path uses it too).
ray_pool.py: the Ray actors, scheduling and fault handling (imported only when Ray is)."""

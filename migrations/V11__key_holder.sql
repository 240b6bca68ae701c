-- Who gave a job's Idempotency-Key: the API key's name (with keys). A replay of the key by
-- another API key is refused rather than answered with a job that is not its own. Rows written
-- before this column (NULL) keep the old rule: the same key and body answer the same.
ALTER TABLE jobs ADD COLUMN key_holder text;

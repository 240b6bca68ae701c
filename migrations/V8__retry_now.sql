-- `continue` on a confirming job: the confirms waiting for their backoff are sent now. The
-- request is counted here, so that the driving instance, which holds the job in memory, hears of
-- it on its next look (as wake_seq tells it of other requests).
ALTER TABLE jobs ADD COLUMN retry_seq bigint NOT NULL DEFAULT 0;

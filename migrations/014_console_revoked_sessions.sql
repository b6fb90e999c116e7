-- Console sessions logged out before their expiry (api/console): a session
-- cookie is signed, not stored, so logout records its id here and every
-- replica refuses it until it would have expired anyway. Rows past
-- expires_at are deleted by the next logout.
CREATE TABLE console_revoked_sessions (
    session_id text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

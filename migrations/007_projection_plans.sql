-- The plan mapping (LEDGER_PLANS) a projection's live version was folded
-- with, in canonical form: part of the read model's identity, like its
-- version. NULL for versions built before it was recorded (the next runner
-- rebuilds them).
ALTER TABLE projection_checkpoints ADD COLUMN plans text;

---- create above / drop below ----
ALTER TABLE projection_checkpoints DROP COLUMN plans;

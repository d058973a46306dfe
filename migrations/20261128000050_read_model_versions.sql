-- A counter per read model, bumped by its projector in the transaction of every batch that
-- changed it: the query cache keys its answers by these versions (src/infra/cache.rs).
CREATE TABLE read_model_versions
(
    name    text PRIMARY KEY,
    version bigint NOT NULL
);

-- Read model: a plant's photos (projection `plants`). Object keys are opened from the log's
-- sealed fields; the bytes live in the photo store (STORAGE_DIR or STORAGE_URL).
CREATE TABLE plant_photos
(
    id            uuid PRIMARY KEY,
    plant_id      uuid        NOT NULL REFERENCES plants (id) ON DELETE CASCADE,
    object_key    text        NOT NULL,
    thumbnail_key text        NOT NULL,
    width         integer     NOT NULL,
    height        integer     NOT NULL,
    bytes         bigint      NOT NULL,
    uploaded_by   uuid        NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX plant_photos_plant ON plant_photos (plant_id, id);

-- Write side, not a read model: uploads in flight. A row is written before the objects are
-- stored and deleted in the transaction that appends `PhotoAdded`; a row that outlives its
-- upload names objects whose event never committed, which the sweeper deletes.
CREATE TABLE photo_uploads
(
    photo_id   uuid PRIMARY KEY,
    keys       text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

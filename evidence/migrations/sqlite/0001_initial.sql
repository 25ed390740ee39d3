-- 0001_initial: builds, connections and decision records.
-- Times are INTEGER microseconds since the Unix epoch (UTC); NULL when unknown.
-- Lists that are only returned, never searched, are JSON arrays in TEXT.

CREATE TABLE builds (
	id            INTEGER PRIMARY KEY,
	source        TEXT NOT NULL,
	event_id      TEXT NOT NULL,
	node          TEXT NOT NULL,
	tool          TEXT NOT NULL DEFAULT '',
	image_id      TEXT NOT NULL DEFAULT '',
	started       INTEGER,
	finished      INTEGER,
	at            INTEGER NOT NULL, -- finished, else started, else when stored: order and retention
	pids          TEXT,             -- JSON array of integers
	container_ids TEXT,             -- JSON array of strings
	cgroup_id     TEXT NOT NULL DEFAULT '',
	steps         TEXT,             -- JSON array of strings
	tags          TEXT,             -- JSON array of strings, in reported order
	UNIQUE (source, event_id)
);
CREATE INDEX builds_image_id ON builds (image_id, at); -- read backwards: at DESC, id DESC
CREATE INDEX builds_at ON builds (at);

-- One row per tag of a build, with the build's time copied in so that
-- "newest builds that tagged T" is one index range.
CREATE TABLE build_tags (
	build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
	tag      TEXT NOT NULL,
	at       INTEGER NOT NULL,
	PRIMARY KEY (build_id, tag)
) WITHOUT ROWID;
CREATE INDEX build_tags_tag ON build_tags (tag, at DESC, build_id DESC);

CREATE TABLE connections (
	id           INTEGER PRIMARY KEY,
	source       TEXT NOT NULL,
	event_id     TEXT NOT NULL,
	node         TEXT NOT NULL,
	time         INTEGER NOT NULL,
	process      TEXT NOT NULL DEFAULT '',
	pid          INTEGER NOT NULL DEFAULT 0,
	cmdline      TEXT NOT NULL DEFAULT '',
	container_id TEXT NOT NULL DEFAULT '',
	cgroup_id    TEXT NOT NULL DEFAULT '',
	dest_ip      TEXT,             -- netip.Addr.String(); NULL when unknown
	dest_port    INTEGER NOT NULL DEFAULT 0,
	dest_name    TEXT NOT NULL DEFAULT '',
	UNIQUE (source, event_id)
);
CREATE INDEX connections_node_time ON connections (node, time);
CREATE INDEX connections_time ON connections (time);

CREATE TABLE decisions (
	id         TEXT PRIMARY KEY,
	time       INTEGER NOT NULL,
	operation  TEXT NOT NULL DEFAULT '',
	namespace  TEXT NOT NULL DEFAULT '',
	kind       TEXT NOT NULL DEFAULT '',
	name       TEXT NOT NULL DEFAULT '',
	username   TEXT NOT NULL DEFAULT '',
	user_groups TEXT,               -- JSON array of strings
	mode       TEXT NOT NULL DEFAULT '',
	verdict    TEXT NOT NULL DEFAULT '',
	rules      TEXT,                -- JSON array of strings, in found order
	images     TEXT,                -- the webhook's JSON, as given
	exceptions TEXT                 -- JSON array of strings
);
CREATE INDEX decisions_time ON decisions (time DESC, id DESC);
CREATE INDEX decisions_namespace_time ON decisions (namespace, time DESC);

-- Search indexes of decisions: rule IDs, and lower-cased image references
-- and digests taken from images.
CREATE TABLE decision_rules (
	decision_id TEXT NOT NULL REFERENCES decisions (id) ON DELETE CASCADE,
	rule        TEXT NOT NULL,
	PRIMARY KEY (decision_id, rule)
) WITHOUT ROWID;
CREATE INDEX decision_rules_rule ON decision_rules (rule, decision_id);

CREATE TABLE decision_images (
	decision_id TEXT NOT NULL REFERENCES decisions (id) ON DELETE CASCADE,
	image       TEXT NOT NULL,
	PRIMARY KEY (decision_id, image)
) WITHOUT ROWID;
CREATE INDEX decision_images_image ON decision_images (image, decision_id);

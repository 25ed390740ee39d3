-- 0001_initial: builds, connections and decision records.
-- The same logical schema as SQLite's, with PostgreSQL types: timestamptz
-- (microseconds), inet, jsonb.

CREATE TABLE builds (
	id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	source        text NOT NULL,
	event_id      text NOT NULL,
	node          text NOT NULL,
	tool          text NOT NULL DEFAULT '',
	image_id      text NOT NULL DEFAULT '',
	started       timestamptz,
	finished      timestamptz,
	at            timestamptz NOT NULL, -- finished, else started, else when stored: order and retention
	pids          jsonb,                -- array of integers
	container_ids jsonb,                -- array of strings
	cgroup_id     text NOT NULL DEFAULT '',
	steps         jsonb,                -- array of strings
	tags          jsonb,                -- array of strings, in reported order
	UNIQUE (source, event_id)
);
CREATE INDEX builds_image_id ON builds (image_id, at DESC, id DESC);
CREATE INDEX builds_at ON builds (at, id);

CREATE TABLE build_tags (
	build_id bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
	tag      text NOT NULL,
	at       timestamptz NOT NULL,
	PRIMARY KEY (build_id, tag)
);
CREATE INDEX build_tags_tag ON build_tags (tag, at DESC, build_id DESC);

CREATE TABLE connections (
	id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	source       text NOT NULL,
	event_id     text NOT NULL,
	node         text NOT NULL,
	time         timestamptz NOT NULL,
	process      text NOT NULL DEFAULT '',
	pid          integer NOT NULL DEFAULT 0,
	cmdline      text NOT NULL DEFAULT '',
	container_id text NOT NULL DEFAULT '',
	cgroup_id    text NOT NULL DEFAULT '',
	dest_ip      inet,
	dest_port    integer NOT NULL DEFAULT 0,
	dest_name    text NOT NULL DEFAULT '',
	UNIQUE (source, event_id)
);
CREATE INDEX connections_node_time ON connections (node, time, id);
CREATE INDEX connections_time ON connections (time, id);

CREATE TABLE decisions (
	id         text PRIMARY KEY,
	time       timestamptz NOT NULL,
	operation  text NOT NULL DEFAULT '',
	namespace  text NOT NULL DEFAULT '',
	kind       text NOT NULL DEFAULT '',
	name       text NOT NULL DEFAULT '',
	username   text NOT NULL DEFAULT '',
	user_groups jsonb,
	mode       text NOT NULL DEFAULT '',
	verdict    text NOT NULL DEFAULT '',
	rules      jsonb,
	images     json,                 -- the webhook's JSON, verbatim
	exceptions jsonb
);
CREATE INDEX decisions_time ON decisions (time DESC, id DESC);
CREATE INDEX decisions_namespace_time ON decisions (namespace, time DESC);

CREATE TABLE decision_rules (
	decision_id text NOT NULL REFERENCES decisions (id) ON DELETE CASCADE,
	rule        text NOT NULL,
	PRIMARY KEY (decision_id, rule)
);
CREATE INDEX decision_rules_rule ON decision_rules (rule, decision_id);

CREATE TABLE decision_images (
	decision_id text NOT NULL REFERENCES decisions (id) ON DELETE CASCADE,
	image       text NOT NULL,
	PRIMARY KEY (decision_id, image)
);
CREATE INDEX decision_images_image ON decision_images (image text_pattern_ops, decision_id);

-- 0002_node_keyed_evidence: builds and connections are keyed by (node,
-- source, event_id) instead of (source, event_id), so that one node's
-- report cannot take an event ID another node will report (the node
-- agent's build IDs are predictable: "docker-build/<imageID>"). Every item
-- records who reported it. build_tags carries its build's node, so that a
-- tag lookup can take a few builds of each node.
--
-- SQLite cannot change a table's UNIQUE constraint, so the three tables
-- are rebuilt and their rows copied with their IDs. build_tags references
-- builds: the new build_tags references the new builds, the old
-- build_tags is dropped before the old builds (so that dropping builds
-- cascades to nothing), and renaming the new builds rewrites the
-- reference in the new build_tags.

CREATE TABLE builds_0002 (
	id            INTEGER PRIMARY KEY,
	source        TEXT NOT NULL,
	event_id      TEXT NOT NULL,
	node          TEXT NOT NULL,
	reporter      TEXT NOT NULL DEFAULT '', -- the user that posted it; '' for builds stored before 0002
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
	UNIQUE (node, source, event_id)
);
INSERT INTO builds_0002 (id, source, event_id, node, tool, image_id, started, finished, at, pids, container_ids, cgroup_id, steps, tags)
	SELECT id, source, event_id, node, tool, image_id, started, finished, at, pids, container_ids, cgroup_id, steps, tags FROM builds;

CREATE TABLE build_tags_0002 (
	build_id INTEGER NOT NULL REFERENCES builds_0002 (id) ON DELETE CASCADE,
	tag      TEXT NOT NULL,
	node     TEXT NOT NULL, -- the build's
	at       INTEGER NOT NULL,
	PRIMARY KEY (build_id, tag)
) WITHOUT ROWID;
INSERT INTO build_tags_0002 (build_id, tag, node, at)
	SELECT t.build_id, t.tag, b.node, t.at FROM build_tags t JOIN builds b ON b.id = t.build_id;

DROP TABLE build_tags;
DROP TABLE builds;
ALTER TABLE builds_0002 RENAME TO builds;
ALTER TABLE build_tags_0002 RENAME TO build_tags;
-- A node's builds of an image, newest last; and the nodes that built it.
CREATE INDEX builds_image_node ON builds (image_id, node, at);
CREATE INDEX builds_at ON builds (at);
CREATE INDEX build_tags_tag_node ON build_tags (tag, node, at, build_id);

CREATE TABLE connections_0002 (
	id           INTEGER PRIMARY KEY,
	source       TEXT NOT NULL,
	event_id     TEXT NOT NULL,
	node         TEXT NOT NULL,
	reporter     TEXT NOT NULL DEFAULT '', -- the user that posted it; '' for connections stored before 0002
	time         INTEGER NOT NULL,
	process      TEXT NOT NULL DEFAULT '',
	pid          INTEGER NOT NULL DEFAULT 0,
	cmdline      TEXT NOT NULL DEFAULT '',
	container_id TEXT NOT NULL DEFAULT '',
	cgroup_id    TEXT NOT NULL DEFAULT '',
	dest_ip      TEXT,             -- netip.Addr.String(); NULL when unknown
	dest_port    INTEGER NOT NULL DEFAULT 0,
	dest_name    TEXT NOT NULL DEFAULT '',
	UNIQUE (node, source, event_id)
);
INSERT INTO connections_0002 (id, source, event_id, node, time, process, pid, cmdline, container_id, cgroup_id, dest_ip, dest_port, dest_name)
	SELECT id, source, event_id, node, time, process, pid, cmdline, container_id, cgroup_id, dest_ip, dest_port, dest_name FROM connections;
DROP TABLE connections;
ALTER TABLE connections_0002 RENAME TO connections;
CREATE INDEX connections_node_time ON connections (node, time);
CREATE INDEX connections_time ON connections (time);

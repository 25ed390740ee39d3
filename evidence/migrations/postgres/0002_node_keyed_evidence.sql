-- 0002_node_keyed_evidence: builds and connections are keyed by (node,
-- source, event_id) instead of (source, event_id), so that one node's
-- report cannot take an event ID another node will report (the node
-- agent's build IDs are predictable: "docker-build/<imageID>"). Every item
-- records who reported it. build_tags carries its build's node, so that a
-- tag lookup can take a few builds of each node.

ALTER TABLE builds ADD COLUMN reporter text NOT NULL DEFAULT ''; -- the user that posted it; '' for builds stored before 0002
ALTER TABLE builds DROP CONSTRAINT builds_source_event_id_key;
ALTER TABLE builds ADD CONSTRAINT builds_node_source_event_id_key UNIQUE (node, source, event_id);
-- A node's builds of an image, newest first; and the nodes that built it.
DROP INDEX builds_image_id;
CREATE INDEX builds_image_node ON builds (image_id, node, at DESC, id DESC);

ALTER TABLE build_tags ADD COLUMN node text;
UPDATE build_tags t SET node = b.node FROM builds b WHERE b.id = t.build_id;
ALTER TABLE build_tags ALTER COLUMN node SET NOT NULL;
DROP INDEX build_tags_tag;
CREATE INDEX build_tags_tag_node ON build_tags (tag, node, at DESC, build_id DESC);

ALTER TABLE connections ADD COLUMN reporter text NOT NULL DEFAULT ''; -- the user that posted it; '' for connections stored before 0002
ALTER TABLE connections DROP CONSTRAINT connections_source_event_id_key;
ALTER TABLE connections ADD CONSTRAINT connections_node_source_event_id_key UNIQUE (node, source, event_id);

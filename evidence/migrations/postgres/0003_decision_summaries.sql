-- 0003_decision_summaries: what the review UI's overview, exceptions page and
-- paging read from indexes alone (index-only scans), without the decision rows
-- and their images. Each rule and image row of a decision carries the decision's
-- time, verdict and namespace (rows an older buildguard writes keep the defaults
-- and are left out of summaries until they are pruned); partial indexes hold
-- audit scans' records and the decisions that used exceptions.

ALTER TABLE decision_rules
	ADD COLUMN time timestamptz NOT NULL DEFAULT 'epoch',
	ADD COLUMN verdict text NOT NULL DEFAULT '',
	ADD COLUMN namespace text NOT NULL DEFAULT '';
UPDATE decision_rules r SET time = d.time, verdict = d.verdict, namespace = d.namespace
	FROM decisions d WHERE d.id = r.decision_id;

ALTER TABLE decision_images
	ADD COLUMN time timestamptz NOT NULL DEFAULT 'epoch',
	ADD COLUMN verdict text NOT NULL DEFAULT '',
	ADD COLUMN namespace text NOT NULL DEFAULT '';
UPDATE decision_images i SET time = d.time, verdict = d.verdict, namespace = d.namespace
	FROM decisions d WHERE d.id = i.decision_id;

CREATE INDEX decisions_verdict_time ON decisions (verdict, time, namespace, kind, name);
CREATE INDEX decision_rules_time ON decision_rules (time, rule, verdict, namespace);
CREATE INDEX decision_images_verdict_time ON decision_images (verdict, time, image, namespace, decision_id);
CREATE INDEX decisions_scans ON decisions (time, verdict, namespace, id) WHERE operation = 'SCAN';
CREATE INDEX decisions_exceptions ON decisions (exceptions, time, operation) WHERE exceptions IS NOT NULL;
-- The decisions of one image, newest first (an exact image filter, the
-- review UI's image page); it serves image globs' prefixes as the index it
-- replaces did.
DROP INDEX decision_images_image;
CREATE INDEX decision_images_image ON decision_images (image text_pattern_ops, time, decision_id);

-- 0003_decision_summaries: what the review UI's overview, exceptions page and
-- paging read from indexes alone, without the decision rows and their images.
-- Each rule and image row of a decision carries the decision's time, verdict and
-- namespace (rows an older buildguard writes keep the defaults and are left out
-- of summaries until they are pruned); partial indexes hold audit scans' records
-- and the decisions that used exceptions.

ALTER TABLE decision_rules ADD COLUMN time INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decision_rules ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
ALTER TABLE decision_rules ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
UPDATE decision_rules SET (time, verdict, namespace) =
	(SELECT d.time, d.verdict, d.namespace FROM decisions d WHERE d.id = decision_rules.decision_id);

ALTER TABLE decision_images ADD COLUMN time INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decision_images ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
ALTER TABLE decision_images ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
UPDATE decision_images SET (time, verdict, namespace) =
	(SELECT d.time, d.verdict, d.namespace FROM decisions d WHERE d.id = decision_images.decision_id);

-- Decisions per day and verdict, and the namespaces and workloads denied most.
CREATE INDEX decisions_verdict_time ON decisions (verdict, time, namespace, kind, name);
-- Rules per day.
CREATE INDEX decision_rules_time ON decision_rules (time, rule, verdict, namespace);
-- The images denied most.
CREATE INDEX decision_images_verdict_time ON decision_images (verdict, time, image, namespace, decision_id);
-- Audit scans (their records' IDs end with the scan's name).
CREATE INDEX decisions_scans ON decisions (time, verdict, namespace, id) WHERE operation = 'SCAN';
-- How often each exception was used, and when last.
CREATE INDEX decisions_exceptions ON decisions (exceptions, time, operation) WHERE exceptions IS NOT NULL;
-- The decisions of one image, newest first (an exact image filter, the
-- review UI's image page); it serves image globs' prefixes as the index it
-- replaces did.
DROP INDEX decision_images_image;
CREATE INDEX decision_images_image ON decision_images (image, time, decision_id);

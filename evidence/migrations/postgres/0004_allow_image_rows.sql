-- 0004_allow_image_rows: the image rows of allowed decisions leave
-- decision_images_verdict_time. Only the summary of the images denied most
-- reads it, and it names the verdict it excludes; the image rows of an
-- allowed review were a third of the index entries of its record, and most
-- records are allows. An image's decisions, allowed or not, are still found
-- through decision_images_image.
DROP INDEX decision_images_verdict_time;
CREATE INDEX decision_images_verdict_time ON decision_images (verdict, time, image, namespace, decision_id) WHERE verdict <> 'allow';

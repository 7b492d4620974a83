-- Raw records of hours not compacted yet, each key once: the first stored
-- copy stays, as compaction keeps it. (A window, not DISTINCT ON: that one
-- keeps an aggregate state per column and key, and was ten times slower.)
-- {key}: the dataset's key columns; {order}: ` ORDER BY timestamp` when the
-- key lacks the time, else nothing; {within}: the time ranges, bound as
-- parameters.
SELECT * EXCLUDE (tally_copy)
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {key}{order}) AS tally_copy
      FROM raw WHERE {within})
WHERE tally_copy = 1

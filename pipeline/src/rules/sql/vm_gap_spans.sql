-- The spans NotifyPossibleGap reported, kept per hour of vm_events: VM
-- billing reads them to classify pairs without scanning vm_events.
SELECT CAST(vm_id AS VARCHAR) AS vm_id,
       CAST(last_sent AS BIGINT) AS last_sent,
       CAST(resume_time AS BIGINT) AS resume_time
FROM source
WHERE kind = 'possible_gap' AND vm_id IS NOT NULL
  AND last_sent IS NOT NULL AND resume_time IS NOT NULL

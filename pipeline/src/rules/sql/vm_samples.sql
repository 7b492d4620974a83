-- VM samples in billing order: by VM and time, one copy of each (vm_id,
-- timestamp). The hourly VM rollup folds these in one pass.
SELECT CAST(customer_id AS VARCHAR) AS customer_id,
       CAST(vm_id AS VARCHAR) AS vm_id,
       CAST(timestamp AS BIGINT) AS ts,
       cpu_time_nanos, memory_usage_bytes, disk_read_bytes, disk_write_bytes,
       network_rx_bytes, network_tx_bytes
FROM source
ORDER BY vm_id, ts, customer_id

-- Recovery loads finished jobs whose tasks still hold a lease (a late report must still
-- find them); this keeps that lookup off a scan of every task ever run.
CREATE INDEX weir_tasks_running ON weir_tasks (job_id) WHERE state = 'running';

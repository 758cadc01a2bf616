-- Task updates become HOT (heap-only: no index entry written per update). The partial index
-- on running tasks put `state` in an index predicate, which made every task update write
-- every index of weir_tasks (measured by hand: 44.7 µs a task update with it, 12.9 µs
-- without it and a fill factor of 80, 99 % HOT). Recovery found finished jobs with a task
-- still leased through that index; the job row now says so itself (`lingering`, written
-- with the job's counters in every commit).
ALTER TABLE weir_jobs ADD COLUMN lingering BOOLEAN NOT NULL DEFAULT false;
UPDATE weir_jobs j SET lingering = true
    WHERE j.state NOT IN ('pending', 'running', 'paused', 'compensating')
      AND EXISTS (SELECT 1 FROM weir_tasks t WHERE t.job_id = j.id AND t.state = 'running');
CREATE INDEX weir_jobs_lingering ON weir_jobs (id) WHERE lingering;
DROP INDEX weir_tasks_running;
-- Room on each page for the next version of a row, so an update can stay on its page.
ALTER TABLE weir_tasks SET (fillfactor = 80);

"""The job-queue protocol between the HTTP layer and the workers, and its backends."""

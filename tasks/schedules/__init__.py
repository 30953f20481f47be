"""Recurring tasks: the Schedule model's services (services), when occurrences fall due
(vokaflow.core.recurrence, spec), what happened to them (runs) and the beat that enqueues each
occurrence exactly once (beat)."""

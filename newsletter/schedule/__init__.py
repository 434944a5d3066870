"""Scheduling: wall-clock times and zones (timing), cron expressions (cron), scheduled
campaigns and recurring rules (plans), what is due (due), and the worker that runs it.

The campaigns table is the schedule; APScheduler and cron are only triggers.
"""

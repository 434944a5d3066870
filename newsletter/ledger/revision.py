"""The newest schema revision in migrations/versions/ (migrations.HEAD): a module that
imports nothing, so that run-due's first look (schedule/quick.py) knows it without
loading SQLAlchemy. Move it with each new revision; tests/test_migrations.py checks it."""

HEAD = "0007"

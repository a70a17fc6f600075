"""The notebook-jobs service: everything behind the routes in app.py."""

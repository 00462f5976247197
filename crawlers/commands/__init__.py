"""Project Scrapy commands (``COMMANDS_MODULE`` in ``crawlers/settings.py``); they replace Scrapy's own."""

"""Scrapy spiders of the crawlers project."""

"""The Scrapy project (``scrapy crawl jd``) and the JD-structured demo shop."""

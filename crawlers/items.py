"""The item the JD spider yields: one product with its ordered gallery."""

import scrapy


class ProductItem(scrapy.Item):
    # `products` row fields (warehouse/schemas.py).
    product_id = scrapy.Field()
    source = scrapy.Field()
    sku = scrapy.Field()
    title = scrapy.Field()
    brand = scrapy.Field()
    brand_id = scrapy.Field()
    category = scrapy.Field()
    category_ids = scrapy.Field()
    shop_id = scrapy.Field()
    shop_name = scrapy.Field()
    price = scrapy.Field()
    list_price = scrapy.Field()
    url = scrapy.Field()
    variants = scrapy.Field()
    n_images = scrapy.Field()
    content_hash = scrapy.Field()
    crawled_at = scrapy.Field()
    # Crawl-only fields.
    gallery = scrapy.Field()  # full-size CDN URLs, position 0 = front view
    images = scrapy.Field()  # `images` rows, filled by GalleryPipeline
    layout = scrapy.Field()  # "pageConfig" or "dom" (the fallback parser was used)
    found_via = scrapy.Field()  # "keyword:<kw>" or "category:<ids>" that listed it first (crawlers/outcome.py)
    listing_signature = scrapy.Field()  # its listing entry's signature, recorded once committed (crawlers/listings.py)

    PRODUCT_FIELDS = ("product_id", "source", "sku", "title", "brand", "brand_id", "category", "category_ids",
                      "shop_id", "shop_name", "price", "list_price", "url", "variants", "n_images",
                      "content_hash", "crawled_at")

    def product_row(self) -> dict:
        return {k: self.get(k) for k in self.PRODUCT_FIELDS}

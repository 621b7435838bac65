"""One spider per website; each shares the Redis frontier through FrontierSpider."""

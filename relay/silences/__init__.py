"""Silences: parsing their matchers (matchers), listing and paging them (listing), their JSON
shapes (shapes), filing them for a send to look only at those that may fit it (index), and the
cache a running relay applies them from (cache)."""

"""The Spring Cloud Bus bridge: refreshbus as a member of the ``springCloudBus`` exchange.

:mod:`.bridge` is the one broker task (inbound bus refreshes become ConfigRefreshes, pods'
answers go back as Spring acks, outbound refreshes for ConfigRefreshes that ask for the bus);
:mod:`.answers` is the ``status.springBus`` section of a ConfigRefresh. docs/spring-bus.md
describes the mapping and the security model.
"""

package io.refreshbus.springapp;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.cloud.bus.BusProperties;
import org.springframework.cloud.bus.event.AckRemoteApplicationEvent;
import org.springframework.cloud.config.server.EnableConfigServer;
import org.springframework.cloud.context.config.annotation.RefreshScope;
import org.springframework.cloud.context.scope.refresh.RefreshScopeRefreshedEvent;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.event.EventListener;
import org.springframework.stereotype.Component;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * A plain Spring Cloud Bus member. GET /state tells the tests what the bus did to it: how many
 * refreshes its @RefreshScope beans went through, its bus id, and every ack it saw on the bus
 * (Spring hands acks to the application only with spring.cloud.bus.trace.enabled=true).
 */
@SpringBootApplication
public class SpringApp {

  public static void main(String[] args) {
    SpringApplication.run(SpringApp.class, args);
  }

  /** The one refresh-scoped bean: rebuilt on every refresh, so its creation count moves. */
  @Bean
  @RefreshScope
  public Greeting greeting(@Value("${demo.message:hello}") String message) {
    return new Greeting(message);
  }

  /** Not a record: a refresh-scoped bean is proxied by subclassing, so it cannot be final. */
  public static class Greeting {
    private final String message;

    public Greeting(String message) {
      this.message = message;
    }

    public String message() {
      return message;
    }
  }

  @Component
  public static class Observed {
    final AtomicInteger refreshes = new AtomicInteger();
    final List<Map<String, String>> acks = new ArrayList<>();

    @EventListener
    public void onRefresh(RefreshScopeRefreshedEvent event) {
      refreshes.incrementAndGet();
    }

    @EventListener
    public synchronized void onAck(AckRemoteApplicationEvent ack) {
      Map<String, String> seen = new LinkedHashMap<>();
      seen.put("originService", ack.getOriginService());
      seen.put("ackId", ack.getAckId());
      seen.put("ackDestinationService", ack.getAckDestinationService());
      seen.put("event", ack.getEvent() == null ? null : ack.getEvent().getName());
      acks.add(seen);
    }

    synchronized List<Map<String, String>> acks() {
      return new ArrayList<>(acks);
    }
  }

  @RestController
  public static class StateController {
    private final Observed observed;
    private final Greeting greeting;
    private final BusProperties bus;

    StateController(Observed observed, Greeting greeting, BusProperties bus) {
      this.observed = observed;
      this.greeting = greeting;
      this.bus = bus;
    }

    @GetMapping("/state")
    public Map<String, Object> state() {
      Map<String, Object> state = new LinkedHashMap<>();
      state.put("busId", bus.getId());
      state.put("refreshes", observed.refreshes.get());
      state.put("message", greeting.message());
      state.put("acks", observed.acks());
      return state;
    }
  }

  /** The config-monitor role: a Config Server whose /monitor turns a push webhook into a bus refresh. */
  @Configuration
  @ConditionalOnProperty("demo.config-server")
  @EnableConfigServer
  public static class ConfigServerRole {}
}

package dev.exactly.registry;

import java.util.List;

import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

/**
 * The registry's list of runtime-editable ("dynamic") config properties, which its build-time
 * extension would collect; that extension's build module is not on Maven Central, so this build
 * runs with none: every property keeps its static value (application.properties / environment).
 */
public class StaticConfigOnly {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}

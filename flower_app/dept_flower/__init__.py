"""DEPT's cross-silo Flower app: a ServerApp whose strategy is DEPT (dept_core.silo.SiloServer)
and a ClientApp per data source (dept_core.silo.SiloClient)."""
